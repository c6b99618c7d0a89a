import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("generations", "0012_every_task_in_a_run")]

    operations = [
        migrations.AlterField(
            model_name="task",
            name="run",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.PROTECT,
                related_name="tasks",
                to="generations.run",
            ),
        ),
    ]
