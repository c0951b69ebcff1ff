"""Fix what can be fixed at the input: resampling, intensity and colour harmonization, BN adaptation, ComBat."""
