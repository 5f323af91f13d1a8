"""Every Cyborg subject, built here and nowhere else.

The seed's internal calls (driver registration, discovery, agent registration) are `internal`
subjects: only Cyborg's components and the internal HTTP routes (behind the internal credential)
reach them. Reading hardware is open to the `adapter` role. Per-host parts come before the
operation: `cyborg.agent.<host>.hardware`, `cyborg.driver.<host>.<driver>.hardware`.
"""

SYSTEM = "cyborg"
DRIVERS = ("pci", "nvidia", "inventory")      # the built-in drivers (components/cyborg/driver.py)


def host_token(host: str) -> str:
    """A host name as one subject token (dots are token separators in NATS)."""
    return host.replace(".", "_")


# -- drivers ------------------------------------------------------------------------------------------

def driver_discovery(host: str, driver: str) -> str:
    return f"{SYSTEM}.driver.internal.{host_token(host)}.{driver}.discovery"


def driver_hardware(host: str, driver: str) -> str:
    return f"{SYSTEM}.driver.{host_token(host)}.{driver}.hardware"


# -- agents -------------------------------------------------------------------------------------------

def agent_hello(host: str) -> str:
    """A driver registers with its host's agent (the seed's `POST /hello` to the agent)."""
    return f"{SYSTEM}.agent.internal.{host_token(host)}.hello"


def agent_discovery(host: str) -> str:
    return f"{SYSTEM}.agent.internal.{host_token(host)}.discovery"


def agent_hardware(host: str) -> str:
    return f"{SYSTEM}.agent.{host_token(host)}.hardware"


# -- the conductor ------------------------------------------------------------------------------------

CONDUCTOR_HELLO = f"{SYSTEM}.conductor.internal.hello"          # an agent registers (the seed's POST /hello)
CONDUCTOR_HEARTBEAT = f"{SYSTEM}.conductor.internal.heartbeat"  # an agent renews its lease
CONDUCTOR_REPORT = f"{SYSTEM}.conductor.internal.report"        # an agent reports its hardware's changes
CONDUCTOR_HARDWARE = f"{SYSTEM}.conductor.hardware"             # every host's hardware, filtered, since a revision
CONDUCTOR_AGENTS = f"{SYSTEM}.conductor.agents"                 # every agent and its state
