"""File-drop connector: HL7 v2 files dropped into a watched directory (see connector.py)."""
