"""Task definitions: the reliable base class and the example tasks."""
