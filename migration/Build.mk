# migration/ — the engine, VMM-agnostic: stages, convergence policy, wire
# protocol, stats.  Sees a VMM only through the ops table and a transport only
# through transport.h.
