"""HU <-> linear attenuation (1/mm) conversion.

``mu = mu_water * (1 + HU / 1000)``; ``mu_water`` defaults to 0.0192 /mm (about 70 keV).
Works on NumPy arrays, torch tensors and scalars alike.
"""

MU_WATER_PER_MM = 0.0192


def hu_to_mu(hu, mu_water: float = MU_WATER_PER_MM):
    """Hounsfield units -> linear attenuation coefficient in 1/mm."""
    return mu_water * (1.0 + hu / 1000.0)


def mu_to_hu(mu, mu_water: float = MU_WATER_PER_MM):
    """Linear attenuation coefficient in 1/mm -> Hounsfield units."""
    return (mu / mu_water - 1.0) * 1000.0


def scan_mu_water(geom, mu_water=None) -> float:
    """``mu_water`` if given, else the scan's own (``geom.mu_water_per_mm``, which travels
    with the geometry and the files written beside every sinogram), in 1/mm."""
    if mu_water is not None:
        return float(mu_water)
    return float(getattr(geom, "mu_water_per_mm", MU_WATER_PER_MM))
