"""Dataset helpers: the procedural default set (``synthetic``), converters for public releases (``convert``) and the
paper's gamma pre-processing (``gamma``)."""
