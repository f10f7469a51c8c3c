"""matrix-nio bots with end-to-end encryption (dispatch, auditor): they come
with their own issues and share this package."""
