from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('gallery', '0008_runs'),
    ]

    operations = [
        migrations.AlterField(
            model_name='job',
            name='kind',
            field=models.CharField(choices=[('checks', 'checks'), ('preview', 'preview'), ('commit', 'commit'), ('use', 'use'), ('environment', 'environment'), ('update', 'update'), ('run', 'run')], max_length=20),
        ),
    ]
