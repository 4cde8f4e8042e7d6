"""The operator's station: review items in SQLite, the sink that fills it, and the review web page."""
