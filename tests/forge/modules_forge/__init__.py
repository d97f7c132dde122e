"""modules_forge stand-in: present in every Forge (Forge 1 and 2); only its version module is modelled."""
