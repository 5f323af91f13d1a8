"""MesaTEE services (seed: mesatee-services-api.txt)."""
