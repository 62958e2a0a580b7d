"""DailyDialog teachers read from disk (``-t dailydialog_ext``)."""
