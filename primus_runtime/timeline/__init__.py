"""``python -m primus_runtime pp-timeline``: read a ``dump_pp_data`` folder, measure its bubbles, draw it.

- :mod:`.dump`    load and check ``pp_rank_<r>.json`` / ``config.json`` (Primus's layout) into passes
- :mod:`.bubbles` the measured bubble fraction (idle time inside each rank's iteration) and the one
                  implied by the dumped order alone, with unit costs
- :mod:`.draw`    the picture (matplotlib): one row per rank, passes coloured by kind, bubbles shaded
- :mod:`.cli`     the command
"""
