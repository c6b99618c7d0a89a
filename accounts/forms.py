from django import forms

from accounts.models import User


class ProfileForm(forms.ModelForm):
    class Meta:
        model = User
        fields = ["display_name", "email"]
        labels = {"display_name": "Display name", "email": "Email (for password resets)"}
