"""How ranks combine work. ``data``: synchronous data-parallel SGD (one packed
Allreduce per step)."""
