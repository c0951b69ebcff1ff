"""``shiftkit demo``: a planted two-hospital shift, measured, explained and adapted to, with no user data."""
