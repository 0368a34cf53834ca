"""Reading Yjs documents for readers that do not speak Yjs."""
