"""One module per page (or per family of closely related pages)."""
