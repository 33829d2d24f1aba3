"""The status page (status.html), a package resource served by collector/http.py."""
