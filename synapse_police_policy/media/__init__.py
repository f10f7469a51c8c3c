"""Media rules: the type by content, sizes, the daily quota."""
