"""URLs of the boards: the list, a board's page and its edits, and the control on a result.

Every name starts with "generations-board", which the permission tests read to find them all."""

from django.urls import path

from generations import boards

urlpatterns = [
    path("boards/", boards.board_list, name="generations-boards"),
    path("boards/new", boards.board_new, name="generations-board-new"),
    path("boards/<uuid:code>/", boards.board_detail, name="generations-board"),
    path("boards/<uuid:code>/edit", boards.board_edit, name="generations-board-edit"),
    path("boards/<uuid:code>/delete", boards.board_delete, name="generations-board-delete"),
    path(
        "boards/<uuid:code>/results/<uuid:task>",
        boards.board_toggle,
        name="generations-board-toggle",
    ),
    path("boards/for/<uuid:task>/", boards.board_panel, name="generations-board-panel"),
    path("boards/for/<uuid:task>/new", boards.board_panel_new, name="generations-board-panel-new"),
]
