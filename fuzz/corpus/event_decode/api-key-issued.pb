B?
$01a214fc-9fad-73ad-a62a-85e7a0cb21f9admin00"tenant_admin