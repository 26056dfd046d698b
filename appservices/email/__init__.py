"""E-mail bridge: mail to a room's address lands in the room; the room's messages go out as
mail (see README.md, "Bridges")."""
