"""The core's own plugins: the `module` model adapter, the `linear` probe, image metrics and datasets."""
