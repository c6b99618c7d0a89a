"""URLs of the studio (create, tasks, gallery). The pages arrive with the task engine."""

urlpatterns: list = []
