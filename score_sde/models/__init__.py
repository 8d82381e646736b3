"""Score networks. Importing this package registers every model with `models.utils`."""
from score_sde.models import utils  # noqa: F401
