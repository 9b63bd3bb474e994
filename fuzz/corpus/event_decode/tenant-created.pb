
,
$01a214fc-9fad-73ad-a62a-85e5ab4cf73eacme