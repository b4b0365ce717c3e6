"""The offline toy world: a procedural text-to-image generator and a planted target model.

``procedural:shapes`` renders scenes of coloured, textured shapes from free text;
``planted:shapes`` reads pixels only and exposes units whose concepts are known
(see :mod:`toyworld.truth`), so LINE can run end to end offline and be scored.
"""

TOY_WORLD_FAMILIES = ("planted", "learned")
"""The target families of the toy world (``planted:shapes``, ``learned:shapes``): targets whose
units have a known or dissected concept and whose images are toy scenes."""
