from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('gallery', '0007_environment_last_used'),
    ]

    operations = [
        migrations.AlterField(
            model_name='job',
            name='kind',
            field=models.CharField(choices=[('checks', 'checks'), ('preview', 'preview'), ('commit', 'commit'), ('use', 'use'), ('environment', 'environment'), ('update', 'update')], max_length=20),
        ),
    ]
