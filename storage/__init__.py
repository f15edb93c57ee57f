"""Where terraloom's stores live and how writers coordinate on them.

The storage layer sits beside ``schemas`` at the bottom of the stage order so that every stage
(pipeline, tokenize_jobs, model) can import it: store locations, write-once commit markers and
the exclusive leases that keep two jobs from preparing one output at the same time.
"""
