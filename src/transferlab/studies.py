"""Makes the studies in experiments/ loadable by name (`transferlab-train -cn <study>`)."""

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.plugins import Plugins
from hydra.plugins.search_path_plugin import SearchPathPlugin

STUDIES_PACKAGE = "pkg://transferlab.experiments"


class StudiesSearchPath(SearchPathPlugin):
    """Appends the packaged studies to Hydra's search path, after the user's own config dirs."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append("transferlab-studies", STUDIES_PACKAGE)


def register_studies() -> None:
    # Registered explicitly rather than through the hydra_plugins namespace, which editable
    # installs hide from Hydra's plugin scan.
    Plugins.instance().register(StudiesSearchPath)
