"""Room-set definitions (YAML) and the content hashes of the sets they produce."""

from pathlib import Path

ROOM_SPECS_DIR = Path(__file__).resolve().parent
DEFAULT_CONFIG = ROOM_SPECS_DIR / "elsa.yaml"
RECORDED_HASHES = ROOM_SPECS_DIR / "hashes.json"
