"""lab.em: see the package layout in lab/__init__.py."""
