"""Dataset helpers: the procedural default set (``synthetic``); converters for public releases come here too."""
