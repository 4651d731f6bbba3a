from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('ops', '0007_jobchunk_progress'),
    ]

    operations = [
        migrations.AddIndex(
            model_name='jobrun',
            index=models.Index(condition=models.Q(('task_id', ''), _negated=True), fields=['task_id'], name='jobrun_task_idx'),
        ),
    ]
