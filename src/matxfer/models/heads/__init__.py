"""Built-in heads, one module each.

A module here registers its classes when imported; :mod:`matxfer.models.registry` lists
every built-in name with its module (``BUILTIN_HEADS``) and imports the module on the first
look-up of the name. A new head is one module here plus one line in that table.
"""
