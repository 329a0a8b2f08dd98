//! The worker's read arena: client reads land in chunks shared by every connection of the
//! worker thread instead of in a buffer allocated per read.
//!
//! A client connection holds no read buffer while it waits (an idle connection costs next
//! to nothing), so without the arena every read would allocate one, and every frame split
//! off it (zero copy: a `Bytes` slice) would free it again when the backend has written it:
//! a `malloc`/`free` pair per read, about 5 % of the proxy's CPU under pipelined load.
//! Reading into the arena instead costs one allocation per [`CHUNK`] of input.
//!
//! What a chunk costs in memory: a frame keeps its whole chunk alive until it is dropped,
//! which is when its reply has arrived (the retry path holds the frame until then). So the
//! memory pinned is bounded by the requests in flight, at most one chunk each; a connection
//! left with a partial frame copies it into a buffer of its own (see [`Read::own`]), so a
//! slow or idle client pins nothing.

use std::cell::RefCell;

use bytes::BytesMut;

/// Size of one arena chunk: big enough that an allocation serves many reads (a pipelined
/// read of 16 requests is ~0.5-1.5 KiB), small enough that a frame pinning one is cheap.
pub(crate) const CHUNK: usize = 16 * 1024;

thread_local! {
    static ARENA: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// Runs `read` (a non-blocking read) on a buffer with room for at least `want` bytes, carved
/// from this thread's arena, and returns what it read as a buffer of its own (sharing the
/// chunk's allocation), with its length. `None` when `read` returned `None` (not ready).
pub(crate) fn read<E>(
    want: usize,
    read: impl FnOnce(&mut BytesMut) -> Option<Result<usize, E>>,
) -> Option<Result<(usize, BytesMut), E>> {
    ARENA.with(|cell| {
        let mut arena = cell.borrow_mut();
        // The arena never holds data between calls: what a read put there was split off.
        debug_assert!(arena.is_empty());
        if arena.capacity() < want {
            // Reuses the chunk when every frame split off it is gone (the common case once
            // replies have come back), else starts a new one.
            arena.reserve(want.max(CHUNK));
        }
        match read(&mut arena)? {
            Ok(n) if n > 0 => Some(Ok((n, arena.split()))),
            Ok(n) => Some(Ok((n, BytesMut::new()))),
            Err(e) => Some(Err(e)),
        }
    })
}

/// A copy of `buf` in an allocation of its own, for a partial frame left over from a read
/// into the arena: it may wait there for a long time, and must not pin a chunk meanwhile.
pub(crate) fn own(buf: &BytesMut) -> BytesMut {
    BytesMut::from(&buf[..])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn fill(data: &[u8]) -> impl FnOnce(&mut BytesMut) -> Option<Result<usize, ()>> + '_ {
        move |b: &mut BytesMut| {
            b.extend_from_slice(data);
            Some(Ok(data.len()))
        }
    }

    #[test]
    fn reads_share_a_chunk_and_reuse_it_once_released() {
        let (n, a) = read(1024, fill(b"*1\r\n$4\r\nPING\r\n")).unwrap().unwrap();
        assert_eq!(n, 14);
        assert_eq!(&a[..], b"*1\r\n$4\r\nPING\r\n");
        let (_, b) = read(1024, fill(b"GET k\r\n")).unwrap().unwrap();
        // The second read landed right after the first, in the same allocation.
        assert_eq!(a.as_ptr().wrapping_add(a.len()), b.as_ptr());
        let start = a.as_ptr();
        drop((a, b));
        // Once every read is released, a read that needs more room than is left takes
        // the chunk back from its start rather than allocating a new one.
        let (_, c) = read(CHUNK, fill(b"x")).unwrap().unwrap();
        assert_eq!(c.as_ptr(), start);
    }

    #[test]
    fn a_held_read_does_not_stop_new_reads_and_partial_frames_are_copied_out() {
        let (_, held) = read(1024, fill(b"held")).unwrap().unwrap();
        // More than the chunk has left: a new chunk, the held read stays valid.
        let (_, big) = read(CHUNK, fill(&[b'y'; 100])).unwrap().unwrap();
        assert_eq!(&held[..], b"held");
        assert_eq!(big.len(), 100);
        let owned = own(&held);
        assert_eq!(&owned[..], b"held");
        assert_ne!(owned.as_ptr(), held.as_ptr());
    }

    #[test]
    fn not_ready_and_errors_pass_through() {
        assert!(read::<()>(1024, |_| None).is_none());
        assert!(matches!(
            read(1024, |_| Some(Err("boom"))),
            Some(Err("boom"))
        ));
        let (n, b) = read::<()>(1024, |_| Some(Ok(0))).unwrap().unwrap();
        assert_eq!((n, b.len()), (0, 0));
    }
}
