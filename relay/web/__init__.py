"""The web console, the JSON API and the blocklist feeds (`floodgate web`)."""
