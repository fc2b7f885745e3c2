"""What a user touches: the CLI, the read-side views, the terminal progress, the report and the
dashboard. It reads through the runtime and the stores; nothing below imports it."""
