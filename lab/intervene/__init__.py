"""lab.intervene: see the package layout in lab/__init__.py."""
