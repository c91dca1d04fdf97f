"""`zflood chat`: a group chat that lasts years, on the local API only."""
