"""The local stand-in for Supabase Realtime (``postgres_changes`` only), REALTIME.md.

- ``pgoutput``: decodes PostgreSQL's built-in logical replication output (the change source);
- ``capture``: a temporary logical slot polled every ~100 ms, yielding committed transactions
  in commit order;
- ``protocol``: Phoenix frames in both serializers (vsn 1.0.0 objects, 2.0.0 arrays);
- ``server``: sockets, channels, bindings, per-subscriber RLS checks, delivery.
"""
