"""What every layer above the models uses: device choice (``device``), safe checkpoint I/O
(``checkpoint``), process groups and collectives (``distributed``) and seeded draws that do not
depend on how work is split across processes (``seeding``)."""
