"""What makes one cache a fleet: identity and peers, owner routing, purge fan-out, the cluster launcher.

edge/ imports proxy/; proxy/ never imports edge/.
"""
