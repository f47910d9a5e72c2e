from __future__ import annotations

from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True
    dependencies: list[tuple[str, str]] = []
    operations = [
        migrations.CreateModel(
            name="Order",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False,
                                           verbose_name="ID")),
                ("item", models.CharField(max_length=100)),
                ("quantity", models.IntegerField(default=1)),
                ("tracking", models.CharField(blank=True, max_length=100, null=True)),
            ],
            options={"ordering": ["id"]},
        ),
    ]
