"""Makes the studies in experiments/ loadable by name (`transferlab-train -cn <study>`)."""

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

from transferlab.compat import register_plugin

STUDIES_PACKAGE = "pkg://transferlab.experiments"


class StudiesSearchPath(SearchPathPlugin):
    """Appends the packaged studies to Hydra's search path, after the user's own config dirs."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append("transferlab-studies", STUDIES_PACKAGE)


def register_studies() -> None:
    register_plugin(StudiesSearchPath)
