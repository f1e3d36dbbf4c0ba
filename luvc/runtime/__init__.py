"""Running exported LUVC graphs."""
