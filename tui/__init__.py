"""The operator console (Textual); it talks only to the daemon's control API."""
