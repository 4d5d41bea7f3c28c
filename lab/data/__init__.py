"""lab.data: see the package layout in lab/__init__.py."""
