"""The coupling's wire protocol, as plain data (no MPI import anywhere in this package): tags,
roles and step sentinels (:mod:`.wire`), the exchanges and their schedule (:mod:`.schedule`),
the layout both sides agree on (:mod:`.layout`), the handshake's messages and checks
(:mod:`.handshake`) and the tables sent to foreign (Fortran/C) clients (:mod:`.client_table`).
Transports carry these messages; they decide nothing here."""
