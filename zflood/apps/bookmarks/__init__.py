"""`zflood bookmarks`: one bookmark tree for every browser on every member (DESIGN.md, "Apps")."""
