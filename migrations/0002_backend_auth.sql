-- Credentials the proxies use to authenticate to a service's Redis nodes
-- (`AUTH [username] password`). Write-only: never returned by an API, never logged.
ALTER TABLE services ADD COLUMN backend_username TEXT;
ALTER TABLE services ADD COLUMN backend_password TEXT;
