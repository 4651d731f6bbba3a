from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('ops', '0006_jobchunk'),
    ]

    operations = [
        migrations.AddField(
            model_name='jobchunk',
            name='progress',
            field=models.JSONField(blank=True, default=dict),
        ),
    ]
